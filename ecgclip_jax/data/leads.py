"""The canonical 12-lead order of the data contract.

Every builder writes `ecg[:, i]` for `LEAD_NAMES[i]`, so models, plots and saliency maps
can index leads by name without knowing which dataset a record came from.
"""

LEAD_NAMES = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
NUM_LEADS = len(LEAD_NAMES)
LEAD_INDEX = {name: i for i, name in enumerate(LEAD_NAMES)}
