"""The ``fq-export`` command line: a thin layer over the Python API.

    fq-export layer-error --model minilm --bits 2 --calib-samples 128 --json OUT.json
    fq-export quantize --model M --r R --bits B --method framequant --out CKPT --report R.json
    fq-export eval (--checkpoint CKPT | --model M) [--pairs F.tsv | --text F | --images DIR] --json OUT.json
    fq-export export --checkpoint CKPT --out X.onnx [--onnx-form standard|packed|plugin|plugin-layer]
    fq-export --model M --r R --bits B --out X.onnx|engine.plan --report R.json   (quantize, export, validate)

Exit codes: 0 done; 1 validation failed (nothing at --out; the artifact kept as X.rejected.onnx);
2 bad input (one line on stderr: ``fq-export: error: ...``), checked before any work where it can
be; 3 engine asked for but TensorRT or the plugin library is missing; 4 ONNX conversion failed;
130 / 143 interrupted by SIGINT / SIGTERM (temporaries removed).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from . import eval as eval_cmd
from . import export as export_cmd
from . import layer_error as layer_error_cmd
from . import quantize as quantize_cmd
from .common import (UserError, check_device, check_numbers, check_outputs, disable_library_progress, one_line,
                     quiet_libraries)

COMMANDS = ("layer-error", "quantize", "eval", "export", "run")
EXIT_BAD_INPUT = 2
EXIT_CONVERSION = 4

#: command -> (output options, checks before any work, the command)
_COMMANDS = {
    "layer-error": (layer_error_cmd.OUTPUTS, layer_error_cmd.check, layer_error_cmd.command),
    "quantize": (quantize_cmd.OUTPUTS, quantize_cmd.check, quantize_cmd.command),
    "eval": (eval_cmd.OUTPUTS, None, eval_cmd.command),
    "export": (export_cmd.OUTPUTS, export_cmd.check_export, export_cmd.export_command),
    "run": (export_cmd.OUTPUTS, export_cmd.check_run, export_cmd.run_command),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (``UserError``) instead of usage + exit."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fq-export", description="FrameQuant quantization and deployable export.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log per-layer details")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _add = sub.add_parser

    def add_parser(name, **kwargs):
        return _add(name, parents=[common], **kwargs)

    sub.add_parser = add_parser
    layer_error_cmd.add_parser(sub)
    quantize_cmd.add_parser(sub)
    eval_cmd.add_parser(sub)
    export_cmd.add_parsers(sub)
    return parser


#: the folders of the running command's outputs, where its temporaries live (set by ``main``)
_OUTPUT_FOLDERS: list[Path] = []


def _on_signal(signum, _frame):
    """SIGINT, SIGTERM, SIGHUP: remove this process's temporaries, say so in one line, and exit at
    once with 128 + the signal's number.

    The handler finishes the run itself rather than raising an exception into the interrupted
    code: an exception raised while Python runs a ``__del__`` or a weakref callback is printed and
    dropped, and the run would carry on. Outputs are written to temporaries and renamed into place,
    so an exit at any point leaves ``--out`` either as it was or complete.
    """
    from fq_export.files import remove_own_temporaries

    remove_own_temporaries(_OUTPUT_FOLDERS)
    name = signal.Signals(signum).name
    verb = "interrupted" if signum == signal.SIGINT else "terminated"
    message = f"fq-export: {verb} ({name}); its temporary files were removed\n"
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, RuntimeError):  # closed, or the handler interrupted a write
            pass
    os.write(2, message.encode())
    os._exit(128 + signum)


@contextlib.contextmanager
def signals_handled(folders: list[Path]):
    """For the block, SIGINT (unless ignored), SIGTERM and SIGHUP end the run cleanly
    (:func:`_on_signal`); the previous handlers come back afterwards. Only the main thread can
    install them."""
    _OUTPUT_FOLDERS[:] = folders
    previous = {}
    try:
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None), signal.SIGINT):
            if sig is None:
                continue
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN:
                continue  # e.g. SIGINT of a background job: leave it ignored
            previous[sig] = current
            signal.signal(sig, _on_signal)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _OUTPUT_FOLDERS.clear()


def _error(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"fq-export: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UserError as exc:
        return _error(one_line(exc))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "verbose", False):
        quiet_libraries()
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    if args.no_progress:
        disable_library_progress()
    outputs, check, handler = _COMMANDS[args.command]
    from fq_export.checkpoint import CheckpointError
    from fq_export.models.base import UnknownModelError

    paths = [getattr(args, key, None) for key in ("out", "json", "report")]
    with signals_handled([Path(p).resolve().parent for p in paths if p]):
        try:
            check_numbers(args)
            check_device(getattr(args, "device", None))
            check_outputs(args, outputs)
            if check is not None:
                check(args)
            return handler(args)
        except (UserError, UnknownModelError, CheckpointError, FileNotFoundError, ValueError) as exc:
            return _error(one_line(exc))
        except OSError as exc:  # permissions, full disks ...: one line, not a traceback
            return _error(one_line(exc))
        except RuntimeError as exc:
            if type(exc).__name__ != "ConversionError":  # converters.rewrite: a graph it cannot rewrite
                raise
            return _error(f"ONNX conversion failed: {one_line(exc)}", EXIT_CONVERSION)
        except KeyboardInterrupt:  # SIGINT while its handler was not installed (another thread)
            print("fq-export: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
