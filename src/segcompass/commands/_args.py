"""The one argument-parsing and error-reporting mechanism of every ``segcompass`` command.

A command's options are dataclasses parsed by ``transformers.HfArgumentParser``:

* every multi-word option is accepted as ``--output_dir`` and ``--output-dir`` (HfArgumentParser adds the dashed
  alias of each field name, and ``--no_x`` / ``--no-x`` for a boolean field that defaults to True);
* ``--config FILE.yaml`` reads option values from a YAML mapping; flags on the command line override the file;
* a field with ``metadata={"positional": True}`` is a positional argument (``segcompass segment IMAGE INSTRUCTION``);
* ``"help"`` and ``"choices"`` in a field's metadata may be zero-argument callables, resolved when the parser is
  built, so that choices defined by library code are imported only when a command actually runs;
* a boolean option given without a value means true and never takes the next word unless that word is a boolean
  (``--smoke OUTPUT_DIR`` keeps working);
* ``metadata={"action": "append"}`` on a list field makes a repeatable option taking one value each time
  (``--set a=1 --set b=2``; a YAML list gives it once per item);
* the ``--no_x`` of a boolean field reads "Turn --x off" (HfArgumentParser would repeat the field's own help);
* a command with many options declares the ones people change first (``command(..., first_options={"group title":
  [field names]})``): ``--help`` shows those, grouped, and says that ``--help-all`` lists every option.

Errors, in one place (:func:`fail`, used by :func:`command` and the dispatcher): a usage error or a library
exception (``ValueError``, ``OSError`` and so ``FileNotFoundError``, the package's own errors, which derive from
those) is printed as one line ``error: ...`` on stderr and ends the command with ``SystemExit`` status 2 (as
argparse does for usage errors; ``str()`` of the exception is the message). Nothing here imports torch or
transformers at import time.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

__all__ = ["CommandError", "CommandExit", "build_parser", "command", "default_model_path", "fail", "one_line", "parse",
           "require_segcompass_checkpoint", "resolve_model"]

_BOOLEAN_WORDS = {"yes", "no", "true", "false", "t", "f", "y", "n", "1", "0"}


class CommandError(Exception):
    """A command's usage error or failure, reported as one ``error: ...`` line and exit status 2."""


class CommandExit(SystemExit):
    """How a failed command ends: exit status 2; ``str()`` is the ``error: ...`` line already printed on stderr."""

    def __init__(self, message: str):
        super().__init__(message)
        self.code = 2


#: What a command reports as ``error: ...`` instead of a traceback (the package's own errors derive from these).
REPORTED_ERRORS = (CommandError, ValueError, OSError)


DEBUG = False
"""Set by ``segcompass --debug``: a reported error is printed with its full traceback before the ``error:`` line."""


def fail(error: Exception | str) -> CommandExit:
    """Print ``error: <error>`` on stderr (one line: :func:`one_line`; with :data:`DEBUG` the traceback first) and
    return the :class:`CommandExit` to raise."""
    if DEBUG and isinstance(error, BaseException) and error.__traceback__ is not None:
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    message = f"error: {one_line(error)}"
    print(message, file=sys.stderr)
    return CommandExit(message)


def one_line(error: Exception | str) -> str:
    """The error as one line. transformers' pipeline wraps a model that cannot be loaded in a ``ValueError`` holding
    each attempt's whole traceback: the line is then the last exception line of that traceback (the cause), with
    the model named; any other multi-line message keeps its first line and points to ``--debug``."""
    text = str(error).strip()
    if "\n" not in text:
        return text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[0].startswith("Could not load model"):
        causes = [line for line in lines[1:] if line.split(":", 1)[0].rsplit(".", 1)[-1].endswith(("Error", "Exception"))]
        if causes:
            model = lines[0].split(" with any of", 1)[0]
            return f"{model}: {causes[-1]}"
    return f"{lines[0]} (run with --debug for the full message)"


def _yaml_to_argv(path: str, parser) -> list[str]:
    """The options of YAML file ``path`` as command-line arguments of ``parser`` (placed before the real ones)."""
    import argparse

    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise CommandError(f"cannot read --config {path}: {err}") from err
    if not isinstance(values, dict):
        raise CommandError(f"--config {path} must hold a mapping of option names to values.")
    actions = {option: action for action in parser._actions for option in action.option_strings}
    positional = {action.dest for action in parser._actions if not action.option_strings}
    argv: list[str] = []
    for key, value in values.items():
        if str(key).replace("-", "_") in positional:
            raise CommandError(f"--config {path}: {key!r} is a positional argument; give it on the command line.")
        flag = f"--{key}"
        if isinstance(value, list) and isinstance(actions.get(flag), argparse._AppendAction):
            argv += [item for each in value for item in (flag, str(each))]  # a repeatable option, once per value
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]  # dict-typed options (e.g. generation_kwargs) parse JSON
        else:
            argv += [flag, str(value)]
    return argv + [f"--config={path}"]  # ends the last option's values: a positional argument after it stays one


def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--config FILE`` (or ``--config=FILE``) out of ``argv``: (FILE or None, the other arguments)."""
    for at, item in enumerate(argv):
        if item == "--config":
            if at + 1 >= len(argv):
                raise CommandError("--config needs a YAML file path.")
            return argv[at + 1], argv[:at] + argv[at + 2 :]
        if item.startswith("--config="):
            return item.partition("=")[2], argv[:at] + argv[at + 1 :]
    return None, argv


#: A command's first options: group title -> field names (or a function returning that mapping).
FirstOptions = Mapping[str, Sequence[str]] | Callable[[], Mapping[str, Sequence[str]]]
_HELP_OPTIONS = ("-h", "--help", "--help-all", "--help_all", "--config")


def _parser_class():
    """``HfArgumentParser`` with positional fields, lazily resolved help / choices, readable ``--no_x`` help, the
    first-options ``--help`` (``--help-all`` for everything) and one-line errors."""
    import argparse

    from transformers import HfArgumentParser

    class HelpAll(argparse.Action):
        """``--help-all``: every option (the full HfArgumentParser help), then exit."""

        def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
            super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

        def __call__(self, parser, namespace, values, option_string=None):
            parser._print_message(parser.format_full_help(), sys.stdout)
            parser.exit()

    class CommandParser(HfArgumentParser):
        first_options: Mapping[str, Sequence[str]] | None = None

        def add_first_options(self, first_options: Mapping[str, Sequence[str]]) -> None:
            """Make ``--help`` show only ``first_options`` (grouped) and add ``--help-all`` for every option."""
            self.first_options = first_options
            for action in self._actions:
                if "--help" in action.option_strings:
                    action.help = "Show the options people change first and exit."
            self.add_argument("--help-all", "--help_all", action=HelpAll, help="Show every option and exit.")

        def format_full_help(self) -> str:
            return super().format_help()

        def format_help(self) -> str:
            if not self.first_options:
                return super().format_help()
            formatter = self._get_formatter()
            positionals = [a for a in self._actions if not a.option_strings]
            formatter.add_usage(f"%(prog)s [OPTIONS]{''.join(f' {a.metavar or a.dest.upper()}' for a in positionals)}",
                                [], [])
            formatter.add_text(self.description)
            if positionals:
                formatter.start_section("positional arguments")
                formatter.add_arguments(positionals)
                formatter.end_section()
            options = [a for a in self._actions if a.option_strings and not set(a.option_strings) & set(_HELP_OPTIONS)]
            shown: set[str] = set()
            for title, names in self.first_options.items():
                actions = [a for name in names for a in options if a.dest == name]  # in the declared order
                if actions:
                    formatter.start_section(title)
                    formatter.add_arguments(actions)
                    formatter.end_section()
                    shown.update(a.dest for a in actions)
            formatter.start_section("help and configuration")
            formatter.add_arguments([a for a in self._actions if set(a.option_strings) & set(_HELP_OPTIONS)])
            formatter.end_section()
            total = len({a.dest for a in options})
            formatter.add_text(f"These are {len(shown)} of the {total} options; '{self.prog} --help-all' lists every "
                               "option.")
            return formatter.format_help()

        @staticmethod
        def _parse_dataclass_field(parser, field: dataclasses.Field):
            metadata = dict(field.metadata)
            positional = metadata.pop("positional", False)
            for key in ("help", "choices"):
                if callable(metadata.get(key)):
                    metadata[key] = metadata[key]()
            if positional:
                kwargs = {"type": field.type, "help": metadata.get("help"), "metavar": metadata.get("metavar")}
                if field.default is not dataclasses.MISSING:
                    kwargs.update(nargs="?", default=field.default)
                parser.add_argument(field.name, **kwargs)
                return
            if metadata.get("action") == "append":  # list[X] taking one value per occurrence
                names = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
                default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
                parser.add_argument(*names, type=field.type.__args__[0], default=default, **metadata)
                return
            resolved = copy.copy(field)
            resolved.metadata = MappingProxyType(metadata)
            HfArgumentParser._parse_dataclass_field(parser, resolved)
            for action in parser._actions:  # the --no_x of a boolean defaulting to True: not the field's own help
                if f"--no_{field.name}" in action.option_strings:
                    action.help = f"Turn --{field.name} off (same as --{field.name} false)."
                    action.default = argparse.SUPPRESS  # --{field.name}'s default applies; none to show here

        def error(self, message: str):
            raise CommandError(f"{message} (see '{self.prog} --help')")

    return CommandParser


def _boolean_flags_take_no_word(parser, argv: list[str]) -> list[str]:
    """``--flag`` followed by a non-boolean word becomes ``--flag=true`` so the word stays a positional argument."""
    flags = {option for action in parser._actions if action.nargs == "?" and action.const is True
             for option in action.option_strings}
    out = list(argv)
    for at, item in enumerate(out):
        if item in flags and (at + 1 == len(out) or out[at + 1].lower() not in _BOOLEAN_WORDS):
            out[at] = f"{item}=true"
    return out


def build_parser(dataclass_types: Sequence[type], prog: str, description: str | None = None,
                 first_options: FirstOptions | None = None):
    """The ``HfArgumentParser`` of ``segcompass PROG`` for ``dataclass_types``, with ``--config``; with
    ``first_options`` (group title -> field names, or a function returning them) ``--help`` shows only those and
    ``--help-all`` every option."""
    parser = _parser_class()(list(dataclass_types), prog=f"segcompass {prog}", description=description)
    parser.add_argument("--config", help="YAML file with option values (flags override it).")
    if first_options is not None:
        parser.add_first_options(first_options() if callable(first_options) else first_options)
    return parser


def parse(dataclass_types: Sequence[type], argv: Sequence[str], prog: str, description: str | None = None,
          first_options: FirstOptions | None = None) -> list:
    """Parse ``argv`` (with optional ``--config FILE``) into one instance of each of ``dataclass_types``.

    Raises:
        CommandError: on a usage error (unknown option, bad value, missing argument, unreadable config).
    """
    config, argv = _split_config(list(argv))
    parser = build_parser(dataclass_types, prog, description, first_options)
    if config is not None:
        argv = _yaml_to_argv(config, parser) + argv
    argv = _boolean_flags_take_no_word(parser, argv)
    *outputs, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True,
                                                             look_for_args_file=False)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return list(outputs)[: len(dataclass_types)]  # a trailing namespace holds the consumed --config


def command(name: str, arguments: tuple[type, ...] | Callable[[], tuple[type, ...]], *,
            description: str | None = None, first_options: FirstOptions | None = None,
            model_is_checkpoint: bool = True):
    """Turn ``run(*arguments) -> int | None`` into the entry point ``entry(argv) -> int`` of ``segcompass NAME``.

    ``arguments`` is a tuple of dataclasses, or a function returning it (for dataclasses of modules too heavy to
    import before the command runs). The entry point parses ``argv``, calls ``run`` and returns its exit status
    (0 for None); a :data:`REPORTED_ERRORS` exception becomes one ``error: ...`` line on stderr and
    :class:`CommandExit` (status 2).
    ``entry.parse(argv)`` only parses (raising :class:`CommandError`), ``entry.parser()`` builds the parser,
    ``entry.__wrapped__`` is ``run``.
    ``description`` (for ``--help``) defaults to the command's summary in :data:`segcompass.commands.registry.COMMANDS`.
    ``model_is_checkpoint``: the arguments' ``model`` field names a SegCompass checkpoint, resolved (and a name that
    cannot exist refused) before torch is imported; False for commands whose ``--model`` is another kind of model.
    ``first_options`` (group title -> field names, or a function returning them): ``--help`` shows only these,
    grouped, and ``--help-all`` every option (see :func:`build_parser`).
    """

    def types() -> tuple[type, ...]:
        return tuple(arguments() if callable(arguments) and not dataclasses.is_dataclass(arguments) else arguments)

    def help_text() -> str:
        from .registry import COMMANDS

        return description or COMMANDS[name][2]

    def wrap(run):
        def parse_only(argv: Sequence[str]) -> list:
            return parse(types(), argv, name, help_text(), first_options)

        @functools.wraps(run)
        def entry(argv: Sequence[str] | None = None) -> int:
            from .._registration import deferred_registration, register

            try:
                with deferred_registration():  # parsing imports transformers (HfArgumentParser), not our models
                    arguments = parse_only(sys.argv[1:] if argv is None else argv)
                    for parsed in arguments if model_is_checkpoint else ():  # fail now, before torch loads
                        if isinstance(getattr(parsed, "model", None), str) and parsed.model:
                            resolve_model(parsed.model)
                register()  # the command may load a checkpoint through the Auto classes or the pipeline
                status = run(*arguments)
            except REPORTED_ERRORS as err:
                raise fail(err) from err
            return 0 if status is None else status

        entry.parse, entry.command_name = parse_only, name
        entry.parser = lambda: build_parser(types(), name, help_text(), first_options)
        return entry

    return wrap


def default_model_path(missing: str = "no embedded default model in this installation; pass --model PATH.") -> str:
    """The embedded default checkpoint (:func:`segcompass.presets.default_model_path`); :class:`CommandError`
    ``missing`` without one."""
    from .. import presets

    path = presets.default_model_path()
    if path is None:
        raise CommandError(missing)
    return path


def resolve_model(model: str | None,
                  missing: str = "no embedded default model in this installation; pass --model PATH.") -> str:
    """What a command's ``--model`` names, checked before anything heavy loads: the embedded default when ``model``
    is empty (:func:`default_model_path`, :class:`CommandError` ``missing`` without one), else
    :func:`segcompass.presets.resolve_checkpoint` (a ``ValueError`` at once for a missing path, an unpublished name
    such as ``segcompass-qwen7b`` or an unreachable Hub id)."""
    if not model:
        return default_model_path(missing)
    from ..presets import resolve_checkpoint

    return resolve_checkpoint(model)


def require_segcompass_checkpoint(path: str) -> str:
    """``path``, checked to be a SegCompass checkpoint when it is a local directory (for the commands that run the
    pipeline): another model type (a plain Qwen2 directory, ...) fails as one line now, not inside transformers'
    pipeline factory (which reports it as a processor ``TypeError``)."""
    config_file = Path(path) / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    except (OSError, ValueError, AttributeError):
        return path
    if model_type is not None and model_type != "segcompass":
        raise CommandError(
            f"{path!r} holds a {model_type!r} model, not a SegCompass checkpoint; pass a SegCompass checkpoint "
            "directory (e.g. one written by `segcompass build`), or no --model for the embedded default."
        )
    return path
