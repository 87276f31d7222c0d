"""The engine runs containers from the one base image and they talk over a user-defined network."""

import subprocess
import uuid

# perl-base is part of the minimal Debian base; bash's /dev/tcp is the client
SERVER = (
    "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => 7000, Listen => 5, "
    'ReuseAddr => 1) or die $!; while (my $c = $s->accept) { print $c "hello from $ENV{NAME}\\n"; '
    "close $c }"
)


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def test_base_image_container_answers_over_user_defined_network(docker_engine):
    tag = uuid.uuid4().hex[:8]
    net, server = f"aiia_smoke_{tag}", f"aiia_smoke_srv_{tag}"
    docker("network", "create", net)
    try:
        docker(
            "run",
            "-d",
            "--rm",
            "--name",
            server,
            "--network",
            net,
            "-e",
            f"NAME={server}",
            "debian:bookworm-slim",
            "perl",
            "-e",
            SERVER,
        )
        client = (
            f"for i in $(seq 50); do exec 3<>/dev/tcp/{server}/7000 2>/dev/null && break; "
            "sleep 0.2; done; cat <&3; grep VERSION_CODENAME /etc/os-release"
        )
        probe = docker(
            "run", "--rm", "--network", net, "debian:bookworm-slim", "bash", "-c", client
        )
        assert probe.stdout.splitlines() == [f"hello from {server}", "VERSION_CODENAME=bookworm"]
    finally:
        docker("rm", "-f", server, check=False)
        docker("network", "rm", net, check=False)
