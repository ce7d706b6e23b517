"""
The config loader: an instance of any config dataclass (train.Config, rl.Config) from its defaults, then the
experiment files given (configs/*.py: Python that sets top-level names), then --key=value flags, each checked
against the field's type, with -h listing every field, its default and its comment.

    cfg = parse_config(Config, sys.argv[1:], aliases={"learning_rate": "lr"}, script="train.py")
"""
import dataclasses
import difflib
import inspect
import os
import re
import traceback


def config_help(cls, usage):
    """Every field of the config dataclass cls with its default and its comment, read from its source (-h)."""
    lines = [usage, ""]
    for line in inspect.getsource(cls).splitlines()[2:]:
        m = re.match(r"\s+(\w+): \w+ = .*?(?:\s+#\s*(.*))?$", line)
        if m:
            lines.append(f"  --{m.group(1)}={getattr(cls, m.group(1))!r}".ljust(44) + (m.group(2) or ""))
        elif line.strip().startswith("#"):
            lines.append(line.strip())
    return "\n".join(lines)


def parse_config(cls, argv, aliases=None, script="train.py"):
    """An instance of the config dataclass cls: its defaults, then the experiment files given (their top-level
    names), then --key=value flags, in that order wherever the flags stand on the command line. Unknown keys
    are errors naming the closest valid key (or an alias's, {"learning_rate": "lr"}); values are checked
    against the default's type. -h prints every key and exits."""
    aliases = aliases or {}
    if "-h" in argv or "--help" in argv:
        print(config_help(cls, f"usage: python {script} [config.py ...] [--key=value ...]   (flags apply "
                               f"after the config files)"))
        raise SystemExit(0)
    cfg = cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    flags = [a for a in argv if a.startswith("-")]
    for arg in flags:  # their form first: '--lr 1e-3' would otherwise read 1e-3 as a config file
        key, eq, value = arg.lstrip("-").partition("=")
        if not arg.startswith("--") or not eq or not key:
            raise SystemExit(f"command line: '{arg}' must be --key=value (python {script} -h lists the keys)")
    for arg in [a for a in argv if not a.startswith("-")]:  # config files first ...
        for key, value in _read_config_file(arg).items():
            _set_key(cfg, fields, aliases, key, value, arg)
    for arg in flags:  # ... then the flags, whatever their position
        key, _, value = arg.lstrip("-").partition("=")
        _set_key(cfg, fields, aliases, key, value, "command line", from_cli=True)
    return cfg


def _read_config_file(path):
    """The top-level names an experiment file sets (it is Python: it may compute them, or exec another)."""
    if os.path.isfile(path) and not path.endswith(".py"):
        raise SystemExit(f"{path}: a config file is a .py file (a dataset goes in --datasets=..., a value in "
                         f"--key=value)")
    ns = {"__file__": os.path.abspath(path)}  # so a config can build on another (configs/*_lora.py)
    try:
        with open(path, encoding="utf-8") as f:
            src = f.read()
        exec(compile(src, path, "exec"), ns)
    except (FileNotFoundError, IsADirectoryError):
        raise SystemExit(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise SystemExit(f"{path}: not UTF-8 text (byte {e.start})") from None
    except SyntaxError as e:
        raise SystemExit(f"{path}:{e.lineno}: {e.msg}") from None
    except Exception as e:  # the user's file raised: say where, without our traceback
        frames = reversed(traceback.extract_tb(e.__traceback__))
        line = next((fr.lineno for fr in frames if fr.filename == path), "?")
        raise SystemExit(f"{path}:{line}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in ns.items()
            if not k.startswith("_") and not callable(v) and not hasattr(v, "__file__")}  # not modules


def _set_key(cfg, fields, aliases, key, value, where, from_cli=False):
    if key not in fields:
        close = [aliases[key]] if key in aliases else difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise SystemExit(f"{where}: unknown config key '{key}'{hint}")
    default = getattr(type(cfg), key)
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        type(default), f"a {type(default).__name__}")
    if from_cli and not isinstance(default, str):
        try:
            if isinstance(default, bool):
                value = {"true": True, "false": False}[value.lower()]
            else:
                value = type(default)(value)
        except (KeyError, ValueError):
            raise SystemExit(f"{where}: {key}={value!r} is not {kind}") from None
    if isinstance(default, float) and type(value) is int:
        value = float(value)
    if type(value) is not type(default):
        raise SystemExit(f"{where}: {key} must be {kind}, got {value!r}")
    setattr(cfg, key, value)
