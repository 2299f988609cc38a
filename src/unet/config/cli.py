"""What the Hydra entry points share: user errors end the program with one clear line.

Two kinds of mistakes reach an entry point: settings that compose but are wrong (checked by
``unet.config.checks`` and the readers, raised as :class:`UserError`), and settings Hydra
cannot compose at all (``data=foo``, ``trainer.max_stepz=2``, ``tile_size=[1``). Hydra
prints the second kind over several lines and exits with 1; :func:`check_command_line`
composes the config once before Hydra does and answers both kinds the same way: one
``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from unet.errors import Interrupted, UserError

T = TypeVar("T")

# Hydra flags after which this check cannot compose what Hydra will (help pages, another
# config folder or file, re-running a pickled job): Hydra handles those command lines alone.
_LEFT_TO_HYDRA = ("help", "hydra_help", "info", "shell_completion", "config_path", "config_dir")


# exit code of a program stopped by Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED = 130


def run_or_exit(fn: Callable[..., T], *args, kept: str | None = None) -> T:
    """Call ``fn(*args)``; a :class:`UserError` prints ``error: <message>`` and exits with 2,
    an :class:`Interrupted` run (training stopped by a signal after saving) prints its
    message and exits with its code (143, 130).

    With ``kept`` (what an interrupted ``fn`` leaves, e.g. "an earlier output is kept as it
    was"), Ctrl-C prints ``interrupted; <kept>`` and exits with 130 instead of a traceback.
    """
    try:
        return fn(*args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as err:
        print(err, file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        if kept is None:
            raise
        print(f"interrupted; {kept}", file=sys.stderr)
        sys.exit(INTERRUPTED)


def check_command_line(
    config_dir: str | Path, config_name: str, argv: list[str] | None = None
) -> None:
    """Exit with one ``error:`` line and code 2 if Hydra could not compose ``argv``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    message = command_line_error(Path(config_dir), config_name, argv)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def command_line_error(config_dir: Path, config_name: str, argv: list[str]) -> str | None:
    """Why Hydra could not compose the config of ``argv`` (None if it can)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        args = hydra_flags().parse_args(argv)
    except SystemExit:  # a malformed flag: argparse has printed its usage line
        return None
    if any(getattr(args, flag, None) for flag in _LEFT_TO_HYDRA) or args.experimental_rerun:
        return None
    parser = OverridesParser.create()
    overrides = []
    for line in args.overrides:
        try:
            overrides.extend(parser.parse_overrides([line]))
        except OverrideParseException as err:
            reason = str(err).splitlines()[0]
            return (
                f"{line}: Hydra cannot read this setting ({reason}); expected key=value, "
                "see https://hydra.cc/docs/advanced/override_grammar/basic"
            )
    checked = []
    for override in overrides:
        if override.is_sweep_override() and not args.multirun:
            return (
                f"{override.input_line}: several values (a sweep) in a single run; add "
                "--multirun to sweep, or write a list as key=[a,b]"
            )
        line = _one_value(override)
        if line is not None:
            checked.append((override.input_line, line))
    return _compose_error(config_dir, args.config_name or config_name, checked, args.multirun)


def hydra_flags() -> argparse.ArgumentParser:
    """The command line ``hydra.main`` reads: its flags and the overrides.

    Hydra keeps its own parser private; this one declares the same flags (Hydra 1.3) so that
    a command line parses here as it will there. A flag Hydra adds later fails to parse
    here, and then Hydra answers that command line alone (:func:`command_line_error`).
    """
    from hydra import __version__

    parser = argparse.ArgumentParser(add_help=False, description="Hydra")
    for flags in (("--help", "-h"), ("--hydra-help",), ("--resolve",), ("--run", "-r")):
        parser.add_argument(*flags, action="store_true")
    parser.add_argument("--multirun", "-m", action="store_true")
    parser.add_argument("--shell-completion", "-sc", action="store_true")
    parser.add_argument("--version", action="version", version=f"Hydra {__version__}")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--cfg", "-c", choices=["job", "hydra", "all"])
    for flags in (("--package", "-p"), ("--config-path", "-cp"), ("--config-name", "-cn")):
        parser.add_argument(*flags)
    parser.add_argument("--config-dir", "-cd")
    parser.add_argument("--experimental-rerun")
    info = ["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"]
    parser.add_argument("--info", "-i", const="all", nargs="?", choices=info)
    return parser


def _one_value(override) -> str | None:
    """``override`` with one of its values (the first of a sweep), or None if that cannot be
    said without Hydra's config loader (a glob over choices)."""
    if not override.is_sweep_override():
        return override.input_line
    value = override.value()
    try:
        first = next(iter(override.sweep_string_iterator()))
    except Exception:
        start = getattr(value, "start", None)
        if start is None:
            return None
        first = str(start)
    return f"{override.get_key_element()}={first}"


def _compose_error(
    config_dir: Path, config_name: str, checked: list[tuple[str, str]], multirun: bool = False
):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    lines = [line for _, line in checked]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir.resolve()), version_base="1.3"):
            try:
                cfg = compose(config_name, overrides=lines, return_hydra_config=True)
            except MissingConfigException as err:
                return _missing_choice(err, checked, config_name)
            except (HydraException, OmegaConfBaseException) as err:
                return _not_composed(err, checked, config_name, compose)
    finally:
        GlobalHydra.instance().clear()
    return _run_dir_error(cfg, multirun)


def _run_dir_error(cfg, multirun: bool) -> str | None:
    """Why Hydra could not make the run folder (a file in its way, a read-only or forbidden
    place): Hydra would answer with a traceback before the program starts."""
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    setup_globals()  # the ${now:...} of the folder's name
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        folder = Path(str(OmegaConf.select(cfg, key))).absolute()
    except Exception:  # a name only Hydra's own run can resolve
        return None
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return None
    what = "is not writable" if existing.is_dir() else "is a file"
    return (
        f"{key}={folder}: the run folder cannot be made ({existing} {what}); choose a "
        f"writable place with {key}=<folder>"
    )


def _missing_choice(err, checked, config_name: str) -> str:
    """``data=foo``: name the setting and list the choices there are."""
    missing = str(getattr(err, "missing_cfg_file", "") or "")
    group = missing.rsplit("/", 1)[0] if "/" in missing else ""
    options = sorted(getattr(err, "options", None) or [])
    given = next(
        (given for given, _ in checked if group and given.lstrip("+~").startswith(group + "=")),
        None,
    )
    if given is None or not options:
        return f"{_first_line(err)} (composing the '{config_name}' config)"
    return f"{given}: there is no '{missing}' config; expected one of: {', '.join(options)}"


def _not_composed(err, checked, config_name: str, compose) -> str:
    """``trainer.max_stepz=2``: name the setting, suggest the nearest existing key."""
    text = f"{err} {err.__cause__ or ''}"
    for given, _ in checked:
        key = given.lstrip("+~").split("=", 1)[0]
        if f"'{key}'" not in text:
            continue
        if "not in struct" not in text and "Could not override" not in text:
            return f"{given}: {_first_line(err)}"
        hint = _nearest_key(key, config_name, compose)
        return (
            f"{given}: '{key}' is not a setting of the '{config_name}' config"
            + (f" (did you mean {hint}?)" if hint else "")
            + f"; to add a new key on purpose write +{given}"
        )
    return f"{_first_line(err)} (composing the '{config_name}' config)"


def _nearest_key(key: str, config_name: str, compose) -> str | None:
    """The existing key most like ``key`` under the same parent, if one is close."""
    parent, _, leaf = key.rpartition(".")
    try:
        node = compose(config_name)
        for part in filter(None, parent.split(".")):
            node = node[part]
        names = [str(k) for k in node.keys()]
    except Exception:  # the parent itself does not exist or is not a mapping
        return None
    close = difflib.get_close_matches(leaf, names, n=1)
    return f"{parent + '.' if parent else ''}{close[0]}" if close else None


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), repr(err))
