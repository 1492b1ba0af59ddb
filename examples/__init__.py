"""The paper's findings at CPU scale, and the regime calibration suite.

The four finding scripts import their helpers as the top-level module `_common`, which works when run
as `python examples/NAME.py` (the script's folder is then on sys.path). Run as `python -m
examples.NAME`, as `examples.calibration` is, this package puts the folder there (last, so it shadows
nothing).
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)
