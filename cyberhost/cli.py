"""``cyberhost`` command: ``fit|validate|test`` through LightningCLI, ``generate`` and ``evaluate``.

Training configs are LightningCLI YAML files composed left to right::

    cyberhost fit --config conf/stage1.yaml --config conf/debug/tiny.yaml
    cyberhost fit --config conf/stage2.yaml --config conf/trainer/ddp.yaml --trainer.devices 8

``model`` and ``data`` are chosen by ``class_path`` (``Stage1Module``/``Stage2Module``,
``Stage1DataModule``/``Stage2DataModule``); typed ``__init__`` signatures and dataclasses are the
schema, so an unknown key, a wrong type or an invalid value fails before training starts with a
message naming the key, and the resolved config is saved beside the logs (``config.yaml``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

OTHER_COMMANDS = {
    "generate": "cyberhost.inference.cli",
    "evaluate": "cyberhost.evaluation.cli",
}
"""Subcommands that are not LightningCLI's, each with the module whose ``main(argv)`` runs it (dispatched before
anything imports Lightning: generation and evaluation never load it)."""


def main(argv: Sequence[str] | None = None) -> object:
    """Run the command line.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The LightningCLI object for training subcommands, else what the subcommand returns.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in OTHER_COMMANDS:
        import importlib

        return importlib.import_module(OTHER_COMMANDS[args[0]]).main(args[1:])
    from cyberhost.training.strategies import close_process_group

    cli = build_cli(args)
    close_process_group()  # only after success: a failed rank's peers must not wait in a barrier
    return cli


def console_main() -> int:
    """The ``cyberhost`` console script: :func:`main` turned into an exit status.

    Training subcommands return the LightningCLI object (and raise on failure): success is 0.
    """
    result = main()
    return result if isinstance(result, int) else 0


def build_cli(args: list[str], run: bool = True) -> object:
    """The LightningCLI of ``args`` (``fit --config ...``); ``run=False`` only instantiates (no subcommand).

    LightningCLI reads ``sys.argv`` itself (and warns when it is given ``args`` as well), and
    Lightning's DDP launcher starts the other ranks with ``sys.argv``: so ``sys.argv`` is set to
    exactly these arguments for the call.
    """
    from lightning.pytorch.cli import LightningCLI

    from cyberhost.data.datamodule import ClipDataModule
    from cyberhost.training.module import CyberHostModule, build_on_meta

    class CyberHostCLI(LightningCLI):
        """LightningCLI with our defaults (run dir ``runs/<stage>``, TensorBoard); FSDP2 runs build on meta."""

        def instantiate_classes(self) -> None:
            """As LightningCLI, but under FSDP2 the network is built on the meta device (sharded before it is filled)."""
            config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
            with build_on_meta(_is_fsdp2(config.get("trainer", {}).get("strategy"))):
                super().instantiate_classes()

        def add_arguments_to_parser(self, parser: object) -> None:
            parser.set_defaults(  # type: ignore[attr-defined]
                {
                    "trainer.logger": {
                        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {"save_dir": "runs", "name": "stage"},
                    },
                }
            )

    if not run and args and not args[0].startswith("-"):
        args = args[1:]  # without a subcommand the parser takes the options alone
    saved, sys.argv = sys.argv, [sys.argv[0] if sys.argv else "cyberhost", *args]
    try:
        return CyberHostCLI(
            CyberHostModule,
            ClipDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=None,
            run=run,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "yaml"},
        )
    finally:
        sys.argv = saved


def _is_fsdp2(strategy: object) -> bool:
    """Whether a configured ``trainer.strategy`` (a name, a ``class_path`` node or an instance) is FSDP2."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    if isinstance(strategy, ModelParallelStrategy):
        return True
    path = getattr(strategy, "class_path", None) or (strategy.get("class_path") if isinstance(strategy, dict) else None)
    if not isinstance(path, str) or "." not in path:
        return False
    import importlib

    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False  # LightningCLI reports the bad class path itself
    return isinstance(cls, type) and issubclass(cls, ModelParallelStrategy)


if __name__ == "__main__":
    main()
