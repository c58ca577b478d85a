"""Run `patchddm.train.train` in a fresh process (also under torchrun) for tests/test_train.py.

usage: python tests/_train_worker.py SPEC_JSON
SPEC_JSON: {"config": {TrainConfig fields}, "resume": bool, "overwrite": bool, "summary_dir": path or null}
Each rank writes its summary (with the hash of its weights) to summary_dir/rank<R>.json.
A PatchDDMError is printed as one line "error: ..." on stderr with exit status 1, as the CLI does.
"""
import json, sys
from pathlib import Path

from patchddm.core import PatchDDMError
from patchddm.train import TrainConfig, train


def main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    try:
        summary = train(TrainConfig(**spec["config"]), resume=spec.get("resume", False),
                        overwrite=spec.get("overwrite", False), progress=False)
    except PatchDDMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if spec.get("summary_dir"):
        out = Path(spec["summary_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{summary['rank']}.json").write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
