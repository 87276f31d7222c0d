"""Command line for age v1 files, mirroring the ``age`` and ``age-keygen`` tools.

    python -m opskit.age -r age1... [-r ...] [-R FILE] [-a] [-o OUT] [IN]
    python -m opskit.age -p [-a] [-o OUT] [IN]
    python -m opskit.age -d [-i KEYFILE ...] [-p] [-o OUT] [IN]
    python -m opskit.age keygen [-o KEYFILE]
    python -m opskit.age keygen -y [-o OUT] [KEYFILE]

IN and OUT default to stdin and stdout ("-" means them too). With -o the output is
written to a temporary file next to OUT and renamed only on success, so a failed or
interrupted run never leaves a partial file behind; files are created with mode 0600.
Passphrases come from the AGE_PASSPHRASE environment variable or, without it, from the
terminal; never from the command line. Armored input is detected when decrypting.
Every failure exits with status 1 and one "opskit.age: error: ..." line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import getpass
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn

from opskit import age

PROG = "opskit.age"
PASSPHRASE_ENV = "AGE_PASSPHRASE"  # noqa: S105 - the variable holding it, not a secret

USAGE = """\
python -m opskit.age [-e] (-r RECIPIENT | -R PATH | -i PATH)... [-a] [-o OUTPUT] [INPUT]
       python -m opskit.age [-e] -p [-a] [-o OUTPUT] [INPUT]
       python -m opskit.age -d [-i PATH]... [-p] [-o OUTPUT] [INPUT]
       python -m opskit.age keygen [-o OUTPUT]
       python -m opskit.age keygen -y [-o OUTPUT] [INPUT]"""


class CommandError(Exception):
    """A failure to report as one line and exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{PROG}: error: {message}\n")


def _main_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=USAGE,
        description="Encrypt and decrypt age v1 files (compatible with the age tool).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-e", "--encrypt", action="store_true", help="encrypt (the default)")
    mode.add_argument("-d", "--decrypt", action="store_true", help="decrypt")
    parser.add_argument(
        "-r",
        "--recipient",
        action="append",
        default=[],
        metavar="RECIPIENT",
        help="encrypt to this public key (age1...); repeatable",
    )
    parser.add_argument(
        "-R",
        "--recipients-file",
        action="append",
        default=[],
        metavar="PATH",
        help="encrypt to the public keys listed in PATH; repeatable",
    )
    parser.add_argument(
        "-i",
        "--identity",
        action="append",
        default=[],
        metavar="PATH",
        help="identity (secret key) file; decrypts with it, or encrypts to its public key",
    )
    parser.add_argument(
        "-p",
        "--passphrase",
        action="store_true",
        help=f"use a passphrase (from ${PASSPHRASE_ENV}, else asked on the terminal)",
    )
    parser.add_argument("-a", "--armor", action="store_true", help="write PEM-armored output")
    parser.add_argument("-o", "--output", metavar="OUTPUT", help="output file (default stdout)")
    parser.add_argument("input", nargs="?", metavar="INPUT", help="input file (default stdin)")
    return parser


def _keygen_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} keygen",
        description="Generate an identity file, or print the public keys of one (-y).",
    )
    parser.add_argument("-o", "--output", metavar="OUTPUT", help="write here (default stdout)")
    parser.add_argument(
        "-y", action="store_true", help="print the public keys of the identity file INPUT"
    )
    parser.add_argument("input", nargs="?", metavar="INPUT", help="identity file for -y")
    return parser


# --------------------------------------------------------------------------- input/output


@contextlib.contextmanager
def _open_input(path: str | None) -> Iterator[BinaryIO]:
    if path is None or path == "-":
        yield sys.stdin.buffer
        return
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise CommandError(f"cannot open input file {path}: {exc.strerror}") from None
    with handle:
        yield handle


@contextlib.contextmanager
def _open_output(path: str | None) -> Iterator[BinaryIO]:
    """stdout, or a temporary file next to ``path`` renamed into place on success."""
    if path is None or path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    try:
        fd, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as exc:
        raise CommandError(f"cannot create output file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError:
        raise CommandError(f"{what} {path} is not a text file") from None
    except OSError as exc:
        raise CommandError(f"cannot read {what} {path}: {exc.strerror}") from None


def _keys(parse, text: str, where: str = ""):
    """`parse(text)`, a malformed key becoming a CommandError that says where it was."""
    try:
        return parse(text)
    except age.KeyFormatError as exc:
        raise CommandError(f"{where}{exc}") from None


def _identities_from(paths: Sequence[str]) -> list[str]:
    identities: list[str] = []
    for path in paths:
        text = _read_text(path, "identity file")
        identities += _keys(age.parse_identity_file, text, f"identity file {path}: ")
    return identities


def _recipients_from(recipients: Sequence[str], files: Sequence[str]) -> list[str]:
    result = [str(_keys(age.parse_recipient, recipient)) for recipient in recipients]
    for path in files:
        text = _read_text(path, "recipients file")
        result += _keys(age.parse_recipients_file, text, f"recipients file {path}: ")
    return result


def _read_passphrase(confirm: bool) -> str:
    """From $AGE_PASSPHRASE, else from the terminal; never from argv or stdin."""
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        if not from_env:
            raise CommandError(f"${PASSPHRASE_ENV} is set but empty; set it to the passphrase")
        return from_env
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
    except OSError:
        raise CommandError(
            f"a passphrase is needed but there is no terminal to ask on; set ${PASSPHRASE_ENV}"
        ) from None
    passphrase = getpass.getpass("Enter passphrase: ")
    if not passphrase:
        raise CommandError("empty passphrase; a passphrase is required")
    if confirm and getpass.getpass("Confirm passphrase: ") != passphrase:
        raise CommandError("the passphrases do not match; try again")
    return passphrase


# --------------------------------------------------------------------------- commands


def _encrypt(args: argparse.Namespace) -> None:
    if args.passphrase and (args.recipient or args.recipients_file or args.identity):
        raise CommandError(
            "-p cannot be combined with -r, -R or -i: a passphrase-protected file has no "
            "other recipients"
        )
    recipients = _recipients_from(args.recipient, args.recipients_file)
    recipients += [age.recipient_from_identity(i) for i in _identities_from(args.identity)]
    if not recipients and not args.passphrase:
        raise CommandError("nothing to encrypt to: give -r RECIPIENT, -R FILE, -i FILE or -p")
    if args.output in (None, "-") and not args.armor and sys.stdout.isatty():
        raise CommandError(
            "refusing to write binary ciphertext to a terminal; use -a for armored text or -o FILE"
        )
    passphrase = _read_passphrase(confirm=True) if args.passphrase else None
    with _open_input(args.input) as src, _open_output(args.output) as dst:
        age.encrypt(src, dst, recipients or None, passphrase, armor=args.armor)


def _decrypt(args: argparse.Namespace) -> None:
    if args.recipient or args.recipients_file:
        raise CommandError("-r and -R are for encrypting; decrypt with -i IDENTITY_FILE or -p")
    if args.armor:
        raise CommandError("-a is for encrypting; armored input is detected automatically")
    identities = _identities_from(args.identity)
    # Without -i the file can only be opened with a passphrase: ask for it, but only once
    # the header shows that the file really is passphrase protected.
    passphrase = _asked_passphrase if args.passphrase or not identities else None
    source = ", ".join(args.identity) if args.identity else None
    with _open_input(args.input) as src, _open_output(args.output) as dst:
        try:
            age.decrypt(src, dst, identities, passphrase)
        except age.NoMatchError as exc:
            raise (exc.with_source(source) if source else exc) from None


def _asked_passphrase() -> str:
    return _read_passphrase(confirm=False)


def _created_timestamp() -> str:
    # age-keygen writes RFC 3339 local time with a numeric offset, "Z" for UTC.
    now = datetime.datetime.now().astimezone().replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


def _keygen(argv: Sequence[str]) -> None:
    args = _keygen_parser().parse_args(argv)
    if args.y:
        identities = _identities_from([args.input or "/dev/stdin"])
        lines = "".join(age.recipient_from_identity(i) + "\n" for i in identities)
        with _open_output(args.output) as dst:
            dst.write(lines.encode())
        return
    if args.input:
        raise CommandError("keygen takes no input file (did you mean keygen -y?)")
    identity, recipient = age.generate_identity()
    text = (f"# created: {_created_timestamp()}\n# public key: {recipient}\n{identity}\n").encode()
    if args.output and args.output != "-":
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CommandError(
                f"{args.output} already exists; refusing to overwrite an identity file "
                "(a lost secret key means lost backups)"
            ) from None
        except OSError as exc:
            raise CommandError(f"cannot create {args.output}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(text)
        to_terminal = False
    else:
        sys.stdout.buffer.write(text)
        sys.stdout.buffer.flush()
        to_terminal = sys.stdout.isatty()
    if not to_terminal:  # as age-keygen: the public key must be visible somewhere
        print(f"Public key: {recipient}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["keygen"]:
            _keygen(argv[1:])
        else:
            args = _main_parser().parse_args(argv)
            (_decrypt if args.decrypt else _encrypt)(args)
    except (CommandError, age.AgeError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): point stdout at /dev/null so that the
        # interpreter's final flush does not fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0
