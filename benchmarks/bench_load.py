"""What reading one checkpoint costs: fdl's restricted load, its rebuild of plain containers, and a
discovery peek, on a ResNet-18 state_dict in a training-loop dict that holds numpy values too.

    python benchmarks/bench_load.py [--repeats 30] [--json out.json]

Times are the best of `--repeats` calls in this one process, with one torch thread. Not a test:
nothing is asserted.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def main() -> None:
    from benchmarks.common import best_ms, in_process_arguments, print_results

    args = in_process_arguments(__doc__, 30)

    import numpy as np
    import torch

    from benchmarks.models import resnet18
    from fdl_cli import checkpoints

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ckpt_5.pt"
        model = resnet18()
        torch.save({"model_state_dict": model.state_dict(), "step": 5, "rng": np.random.get_state(),
                    "losses": np.zeros(1000), "best_acc": np.float64(0.5)}, path)
        loaded = checkpoints._load_weights_only(path)
        results = {
            "tensors": len(loaded["model_state_dict"]),
            "parameters": sum(p.numel() for p in model.parameters()),
            "restricted_load_ms": best_ms(lambda: checkpoints._load_weights_only(path), args.repeats),
            "plain_rebuild_ms": best_ms(lambda: checkpoints._plain(loaded), args.repeats * 5),
            "safe_load_ms": best_ms(lambda: checkpoints._torch_load_safe(path), args.repeats),
            "peek_ms": best_ms(lambda: checkpoints._peek_file(path), args.repeats),
        }
    print_results(results, args.json)


if __name__ == "__main__":
    main()
