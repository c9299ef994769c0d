"""The module boundaries of docs/architecture.md, read from the package's own imports: the
library never imports a command, commands are thin shells, `ecgclip_jax` never imports the
dataset builders, and no code cites a file outside the repository."""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("ecgclip_jax", "tfds_builders")
# Self-contained programs, not shells over a library call: benchmarks, and the script that
# writes the manifest builder's example files.
PROGRAMS = {"ecgclip_jax.loss_benchmark", "ecgclip_jax.remat_benchmark",
            "tfds_builders.benchmark", "tfds_builders.ecg_manifest.example.make_example"}


def _modules() -> dict[str, ast.Module]:
  modules = {}
  for package in PACKAGES:
    for path in sorted((REPO / package).rglob("*.py")):
      parts = path.relative_to(REPO).with_suffix("").parts
      name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
      modules[name] = ast.parse(path.read_text(), str(path))
  return modules


MODULES = _modules()


def _is_command(tree: ast.Module) -> bool:
  """A module run as a program: it ends in `if __name__ == "__main__":`."""
  return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
             for node in tree.body)


COMMANDS = {name for name, tree in MODULES.items() if _is_command(tree)}


def _imports(tree: ast.Module) -> set[str]:
  """Every project module a module imports, at any depth (function-level imports too)."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
      found |= {f"{node.module}.{alias.name}" for alias in node.names}
  return {name for name in found if name in MODULES}


def test_the_commands_are_the_ones_the_readme_documents():
  assert {"ecgclip_jax.train", "ecgclip_jax.evaluate", "ecgclip_jax.probe",
          "ecgclip_jax.predict", "ecgclip_jax.export", "ecgclip_jax.compare",
          "ecgclip_jax.interpret.explain"} <= COMMANDS


@pytest.mark.parametrize("name", sorted(set(MODULES) - COMMANDS))
def test_no_library_module_imports_a_command(name):
  assert not _imports(MODULES[name]) & COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS - PROGRAMS))
def test_commands_are_thin_shells(name):
  """Flags, a call into the library, output: `main` and nothing else at module level."""
  defined = [node.name for node in MODULES[name].body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
  assert set(defined) <= {"main"}, f"{name} defines {defined}: move them into the library"


def test_ecgclip_jax_never_imports_the_builders():
  """Builders import the data contract; datasets are opened by name (data/sources.py)."""
  for name, tree in MODULES.items():
    if name.startswith("ecgclip_jax"):
      assert not any(m.startswith("tfds_builders") for m in _imports(tree)), name


def test_code_cites_only_files_in_the_repository():
  assert (REPO / "docs" / "architecture.md").is_file()
  for package in PACKAGES:
    for path in (REPO / package).rglob("*.py"):
      assert "DESIGN.md" not in path.read_text(), path
