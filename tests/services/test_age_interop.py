"""opskit.age against the reference age tool (Debian's `age` and `age-keygen`).

Both directions, X25519 keys and passphrases, binary and armored: a backup we write
must open with `age -d` in a disaster, and files age writes must open with us.
`age -p` reads passphrases only from a terminal, so those runs get a pseudo-terminal.
"""

from __future__ import annotations

import hashlib
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from opskit import age

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
SIZES = [0, 1, 65535, 65536, 65537, 10 * 2**20]
PASSPHRASE = "correct horse battery staple"
PROMPT = re.compile(rb"[Pp]assphrase[^\r\n]*: ")


def size_id(size: int) -> str:
    return f"{size // 2**20}MiB" if size >= 2**20 else f"{size}B"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def age_output_sha256(path: Path) -> str:
    """Digest of a file written by `age -o`, which creates it only on the first byte."""
    return sha256(path) if path.exists() else hashlib.sha256(b"").hexdigest()


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(argv, capture_output=True, timeout=120, **kwargs)
    assert result.returncode == 0, f"{argv} failed: {result.stderr.decode(errors='replace')}"
    return result


def run_with_terminal(
    argv: list[str], passphrase: str, timeout: float = 120, cwd: Path | None = None
) -> str:
    """Run `argv` on a pseudo-terminal, typing `passphrase` at each passphrase prompt.

    The passphrase is typed only once the program has turned echo off (it is reading a
    secret), so it is neither echoed nor lost to a terminal mode switch.
    """
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal (/dev/tty)
        try:
            if cwd is not None:
                os.chdir(cwd)
            env = {k: v for k, v in os.environ.items() if k != "AGE_PASSPHRASE"}
            os.execvpe(argv[0], argv, env)  # noqa: S606 - argv list, no shell involved
        finally:
            os._exit(127)
    output = b""
    answered = 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                raise TimeoutError(f"{argv} did not finish in {timeout}s: {output!r}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            output += data
            while answered < len(PROMPT.findall(output)):
                wait_for_echo_off(fd, deadline)
                os.write(fd, passphrase.encode() + b"\n")
                answered += 1
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, f"{argv} failed: {text}"
    return text


def wait_for_echo_off(fd: int, deadline: float) -> None:
    while termios.tcgetattr(fd)[3] & termios.ECHO:
        if time.monotonic() > deadline:
            raise TimeoutError("the program never turned terminal echo off to read a passphrase")
        time.sleep(0.01)


MISSING_AGE = (
    "the reference age tool is missing (need both age and age-keygen): run `apt-get install age`"
)


def age_installed() -> bool:
    return all(shutil.which(tool) for tool in ("age", "age-keygen"))


def test_reference_age_tool_is_installed():
    assert age_installed(), MISSING_AGE


@pytest.fixture(scope="module")
def age_tool() -> str:
    if not age_installed():
        pytest.fail(MISSING_AGE)
    version = subprocess.run(["age", "--version"], capture_output=True, text=True, check=True)
    print(f"\nreference: age {version.stdout.strip()}")
    return "age"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("age-interop")


@pytest.fixture(scope="module")
def plaintexts(workdir) -> dict[int, Path]:
    files = {}
    for size in SIZES:
        path = workdir / f"plain-{size}"
        path.write_bytes(os.urandom(size))
        files[size] = path
    return files


@pytest.fixture(scope="module")
def their_key(age_tool, workdir) -> tuple[Path, str]:
    """A key pair made by age-keygen: (identity file, recipient)."""
    path = workdir / "age-keygen.key"
    result = run(["age-keygen", "-o", str(path)])
    recipient = result.stderr.decode().removeprefix("Public key: ").strip()
    return path, recipient


@pytest.fixture(scope="module")
def our_key(workdir) -> tuple[Path, str]:
    """A key pair made by `python -m opskit.age keygen`: (identity file, recipient)."""
    path = workdir / "opskit.key"
    result = run([sys.executable, "-m", "opskit.age", "keygen", "-o", str(path)], cwd=ROOT)
    recipient = result.stderr.decode().removeprefix("Public key: ").strip()
    return path, recipient


def our_identities(path: Path) -> list[str]:
    return age.parse_identity_file(path.read_text())


def encrypt_file(plain: Path, out: Path, **kwargs) -> None:
    with plain.open("rb") as src, out.open("wb") as dst:
        age.encrypt(src, dst, **kwargs)


def decrypt_file(encrypted: Path, out: Path, **kwargs) -> None:
    with encrypted.open("rb") as src, out.open("wb") as dst:
        age.decrypt(src, dst, **kwargs)


def test_key_files_are_interchangeable(age_tool, their_key, our_key):
    their_path, their_recipient = their_key
    our_path, our_recipient = our_key
    assert run(["age-keygen", "-y", str(our_path)]).stdout.decode() == f"{our_recipient}\n"
    assert [age.recipient_from_identity(i) for i in our_identities(their_path)] == [their_recipient]


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_we_encrypt_age_decrypts(age_tool, their_key, plaintexts, workdir, size):
    key, recipient = their_key
    encrypted, out = workdir / f"ours-{size}.age", workdir / f"ours-{size}.out"
    encrypt_file(plaintexts[size], encrypted, recipients=[recipient])
    run([age_tool, "-d", "-i", str(key), "-o", str(out), str(encrypted)])
    assert age_output_sha256(out) == sha256(plaintexts[size])


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_age_encrypts_we_decrypt(age_tool, our_key, plaintexts, workdir, size):
    key, recipient = our_key
    encrypted, out = workdir / f"theirs-{size}.age", workdir / f"theirs-{size}.out"
    run([age_tool, "-r", recipient, "-o", str(encrypted), str(plaintexts[size])])
    decrypt_file(encrypted, out, identities=our_identities(key))
    assert sha256(out) == sha256(plaintexts[size])


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_we_encrypt_with_passphrase_age_decrypts(age_tool, plaintexts, workdir, size):
    encrypted, out = workdir / f"ours-p-{size}.age", workdir / f"ours-p-{size}.out"
    encrypt_file(plaintexts[size], encrypted, passphrase=PASSPHRASE)  # age's work factor, 18
    run_with_terminal([age_tool, "-d", "-o", str(out), str(encrypted)], PASSPHRASE)
    assert age_output_sha256(out) == sha256(plaintexts[size])


@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_age_encrypts_with_passphrase_we_decrypt(age_tool, plaintexts, workdir, size):
    encrypted, out = workdir / f"theirs-p-{size}.age", workdir / f"theirs-p-{size}.out"
    run_with_terminal([age_tool, "-p", "-o", str(encrypted), str(plaintexts[size])], PASSPHRASE)
    assert re.search(rb"\n-> scrypt \S+ \d+\n", encrypted.read_bytes()[:300])
    decrypt_file(encrypted, out, passphrase=PASSPHRASE)
    assert sha256(out) == sha256(plaintexts[size])


@pytest.mark.parametrize("size", [0, 65537], ids=size_id)
def test_armor_both_ways(age_tool, their_key, our_key, plaintexts, workdir, size):
    their_path, their_recipient = their_key
    our_path, our_recipient = our_key
    ours, theirs = workdir / f"ours-{size}.asc", workdir / f"theirs-{size}.asc"
    encrypt_file(plaintexts[size], ours, recipients=[their_recipient], armor=True)
    decrypted = run([age_tool, "-d", "-i", str(their_path), str(ours)]).stdout
    assert hashlib.sha256(decrypted).hexdigest() == sha256(plaintexts[size])
    run([age_tool, "-a", "-r", our_recipient, "-o", str(theirs), str(plaintexts[size])])
    assert theirs.read_bytes().startswith(b"-----BEGIN AGE ENCRYPTED FILE-----\n")
    decrypt_file(theirs, workdir / "b.out", identities=our_identities(our_path))
    assert sha256(workdir / "b.out") == sha256(plaintexts[size])


def test_command_lines_pipe_into_each_other(age_tool, their_key, our_key, plaintexts, workdir):
    """`python -m opskit.age` and `age` as an operator would chain them, through pipes."""
    their_path, their_recipient = their_key
    our_path, our_recipient = our_key
    plain = plaintexts[SIZES[-1]]
    ours = [sys.executable, "-m", "opskit.age"]
    with plain.open("rb") as src:
        encrypted = run([*ours, "-r", their_recipient], stdin=src, cwd=ROOT).stdout
    decrypted = run([age_tool, "-d", "-i", str(their_path)], input=encrypted).stdout
    assert hashlib.sha256(decrypted).hexdigest() == sha256(plain)
    with plain.open("rb") as src:
        encrypted = run([age_tool, "-r", our_recipient], stdin=src).stdout
    decrypted = run([*ours, "-d", "-i", str(our_path)], input=encrypted, cwd=ROOT).stdout
    assert hashlib.sha256(decrypted).hexdigest() == sha256(plain)


def test_age_rejects_what_we_reject(age_tool, their_key, plaintexts, workdir):
    """A flipped payload byte: both implementations refuse the file."""
    key, recipient = their_key
    encrypted = workdir / "flipped.age"
    encrypt_file(plaintexts[65537], encrypted, recipients=[recipient])
    data = bytearray(encrypted.read_bytes())
    data[-100] ^= 0x01
    encrypted.write_bytes(bytes(data))
    result = subprocess.run(
        [age_tool, "-d", "-i", str(key), str(encrypted)], capture_output=True, timeout=60
    )
    assert result.returncode != 0
    with pytest.raises(age.PayloadError):
        decrypt_file(encrypted, workdir / "flipped.out", identities=our_identities(key))


def test_our_command_line_asks_on_the_terminal(age_tool, plaintexts, workdir):
    """Without $AGE_PASSPHRASE, `python -m opskit.age -p` prompts (twice) like age does."""
    plain = plaintexts[65537]
    ours = [sys.executable, "-m", "opskit.age"]
    encrypted, out = workdir / "cli-p.age", workdir / "cli-p.out"
    transcript = run_with_terminal(
        [*ours, "-p", "-o", str(encrypted), str(plain)], PASSPHRASE, cwd=ROOT
    )
    assert "Enter passphrase: " in transcript and "Confirm passphrase: " in transcript
    assert PASSPHRASE not in transcript  # not echoed
    run_with_terminal([age_tool, "-d", "-o", str(out), str(encrypted)], PASSPHRASE)
    assert sha256(out) == sha256(plain)
    theirs = workdir / "cli-p-theirs.age"
    run_with_terminal([age_tool, "-p", "-o", str(theirs), str(plain)], PASSPHRASE)
    out.unlink()
    run_with_terminal([*ours, "-d", "-o", str(out), str(theirs)], PASSPHRASE, cwd=ROOT)
    assert sha256(out) == sha256(plain)
