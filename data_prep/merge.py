"""``python -m data_prep.merge --output OUT``: rebuild manifest.json and report.json of a folder
that several machines (``--num-shards K --shard-index i``) wrote into. Readers do not need it:
:func:`cyberhost.data.iter_clips` reads every committed shard of the folder anyway."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.outputs import write_outputs


def main(argv: list[str] | None = None) -> None:
    """Rebuild the manifest and report from the commit records."""
    p = argparse.ArgumentParser(prog="python -m data_prep.merge", description=__doc__.split("\n")[0])
    p.add_argument("--output", type=Path, required=True)
    manifest, _ = write_outputs(p.parse_args(argv).output)
    print(f"{manifest['clips']} clips in {len(manifest['shards'])} shards from {manifest['inputs']} inputs")


if __name__ == "__main__":
    main()
