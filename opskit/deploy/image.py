"""Step 4 of a deploy: the release's image, pulled, built from a ref, or kept (rollback)."""

from __future__ import annotations

from opskit.commands import deploy as cmd
from opskit.deploy import history
from opskit.deploy.plan import DeployError, State
from opskit.runner import CommandFailed

# what a dry run assumes `docker image inspect` says of an image it did not pull or build
ASSUMED_IMAGE = '{"Id": "sha256:0000000", "Config": {"Env": []}}'


class Image:
    """The Deployer's image step."""

    # --- 4. image --------------------------------------------------------------------

    def _image(self, s: State) -> str:
        p, env = self.plan, self.env
        if p.image:
            pulled = self.r.run(cmd.pull(p.image), timeout=1800)
            if not pulled.ok:
                raise DeployError(f"docker pull {p.image} failed", detail=pulled.tail())
            info = self._inspect_image(p.image, assume=ASSUMED_IMAGE)
            s.source = p.image
            s.release = cmd.release_id(s.started, info["id"])
            s.image = env.release_image(s.release)
            self.r.check(cmd.tag(p.image, s.image))
            s.version = info["version"]
            s.image_id = info["id"]
            s.commit = cmd.image_commit(info)
            s.digest = cmd.image_digest(p.image, info)
            return (
                f"pulled {p.image} ({info['id'][7:19]}) as {s.image}, version "
                f"{s.version or '?'}" + (f", commit {s.commit[:12]}" if s.commit else "")
            )

        ref = p.ref or env.branch
        fetched = self.r.run(cmd.git_fetch(env.path), timeout=600)
        if not fetched.ok:
            s.warnings.append(f"git fetch failed ({fetched.tail(1)}); using what is local")
        resolved = self.r.ask(cmd.git_resolve(env.path, ref))
        if not resolved.ok or not resolved.stdout.strip():
            raise DeployError(
                f"no commit named {ref!r} in {env.path}",
                detail=resolved.tail() or "git rev-parse found nothing: check the ref's name",
            )
        s.commit = resolved.stdout.strip().splitlines()[-1]
        cmd.commit_id(s.commit)
        describe = self.r.ask(cmd.git_describe(env.path, s.commit))
        s.version = describe.stdout.strip() if describe.ok else s.commit[:12]
        s.source = f"{ref}@{s.commit[:12]}"
        s.release = cmd.release_id(s.started, s.commit)
        s.image = env.release_image(s.release)
        s.build_dir = f"{env.build_dir}/{s.release}"
        self.r.check(cmd.git_archive(env.path, s.commit, s.build_dir), what="git archive")
        spec = cmd.build_spec(s.build_dir, s.image, s.version, p.extra_ca, s.commit)
        built = self.r.run(cmd.compose_build(s.build_dir), stdin=spec, timeout=3600)
        self.r.run(cmd.remove_build_dir(s.build_dir))
        s.build_dir = ""
        if not built.ok:
            raise DeployError(f"building {s.source} failed", detail=built.tail(25))
        info = self._inspect_image(s.image, assume=ASSUMED_IMAGE)
        s.version = info["version"] or s.version
        s.image_id = info["id"]
        return f"built {s.source} as {s.image}, version {s.version}"

    def _inspect_image(self, image: str, assume: str | None = None) -> dict:
        res = self.r.ask(cmd.image_inspect(image), assume=assume)
        if not res.ok:
            raise CommandFailed(res)
        return cmd.parse_image(res.stdout)

    def _rollback_image(self, s: State) -> str:
        env = self.env
        listed = self.r.ask(cmd.release_images(env))
        kept = cmd.parse_release_images(env, listed.stdout if listed.ok else "")
        target = self.plan.to_release
        if not target:
            log = self.r.ask(history.read(env.history_file, 500))
            entries = history.parse(log.stdout if log.ok else "")
            target = history.previous_release(entries, env.name, s.served_release)
            if not target or target not in kept:
                older = [r for r in kept if r < s.served_release]
                target = older[-1] if older else ""
            if not target:
                raise DeployError(
                    "no earlier release to roll back to",
                    detail=f"serving {s.served_release}; release images kept: "
                    + (", ".join(kept) or "none"),
                )
        if target == s.served_release:
            raise DeployError(f"release {target} is already serving")
        if target not in kept:
            raise DeployError(
                f"release {target} has no image on the server any more",
                detail="kept: " + (", ".join(kept) or "none"),
            )
        s.release = target
        s.image = env.release_image(target)
        info = self._inspect_image(s.image)
        s.version = info["version"]
        s.image_id = info["id"]
        s.source = f"release {target}"
        s.commit = cmd.image_commit(info) or history.release_commit(
            history.parse(self.r.ask(history.read(env.history_file, 500)).stdout or ""),
            env.name,
            target,
        )
        return f"{s.image}, version {s.version or '?'} (serving now: {s.served_release})"
