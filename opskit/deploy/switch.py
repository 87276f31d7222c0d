"""Steps 5 to 7 of a deploy: migrations, the health-gated release, nginx's switch.

Nothing before the switch touches what is serving; `_undo` removes what a failed deploy
created. After the switch, tidying up (drain, stop, rename, prune) is reported, never a
reason to call the deploy failed.
"""

from __future__ import annotations

from opskit.commands import checkout as co
from opskit.commands import deploy as cmd
from opskit.deploy import history
from opskit.deploy.plan import DeployError, State
from opskit.runner import Result

# what a dry run assumes the new release and nginx answer
ASSUMED_HEALTH = 'HTTP/1.0 200 OK\r\n\r\n{"status": "ok"}'
ASSUMED_DRAINED = "0\n"


class Switch:
    """The Deployer's steps from migrations to the switch, and the undo before it."""

    # --- 5. migrations ------------------------------------------------------------------

    def _oneoff(self, s: State, what: str, command: list[str], timeout: float) -> Result:
        assert s.spec is not None
        argv = cmd.run_oneoff(self.env, s.spec, s.release, s.image, what, command)
        return self.r.run(argv, stdin=s.spec.env_file(), timeout=timeout)

    def _migrate(self, s: State) -> str:
        plan = self._oneoff(s, "plan", cmd.showmigrations(), 300)
        if not plan.ok:
            raise DeployError("cannot read the migration plan", detail=plan.tail())
        s.plan_before = cmd.parse_plan(plan.stdout)
        ran = self._oneoff(s, "migrate", cmd.migrate(), 1800)
        applied, failed = cmd.parse_migrate(ran.stdout)
        s.applied = applied
        if not ran.ok:
            raise DeployError(
                f"migration {failed or '(unknown)'} failed"
                + (f" after applying {len(applied)}" if applied else ""),
                detail=ran.tail(12),
            )
        detail = (
            f"applied {len(applied)}: {', '.join(applied)}" if applied else "no migrations pending"
        )
        assert s.spec is not None
        if s.spec.volumes:
            static = self._oneoff(s, "static", cmd.collectstatic(), 600)
            if not static.ok:
                raise DeployError("collectstatic failed", detail=static.tail())
            detail += "; static files collected"
        return detail

    # --- 6. the new release, health-gated -----------------------------------------------

    def _release(self, s: State) -> str:
        p, env = self.plan, self.env
        assert s.spec is not None
        name = env.release_container(s.release)
        labels = cmd.compose_labels(s.served_labels, s.image_id)
        argv = cmd.run_release(env, s.spec, s.release, s.image, s.source, labels)
        s.new_container = name
        started = self.r.run(argv, stdin=s.spec.env_file(), timeout=300)
        if not started.ok:
            raise DeployError(f"could not start {name}", detail=started.tail())
        t = self.clock()
        last = cmd.Health(False, None, detail="not probed")
        for attempt in range(1, p.health_attempts + 1):
            res = self.r.ask(
                cmd.probe(name, s.port, timeout_s=p.health_timeout_s),
                timeout=p.health_timeout_s + 30,
                assume=ASSUMED_HEALTH,
            )
            last = cmd.parse_health(res.exited, res.stdout)
            if last.ok:
                version = last.version
                if s.version and version and version != s.version:
                    s.warnings.append(f"/health/ reports version {version}, image says {s.version}")
                s.version = version or s.version
                return (
                    f"{name} healthy after {attempt}/{p.health_attempts} attempts "
                    f"({self.clock() - t:.1f}s), version {s.version or '?'}"
                )
            state = self.r.ask(cmd.container_state(name))
            words = state.stdout.split()
            if state.ok and words and words[0] in ("exited", "dead"):
                logs = self.r.ask(cmd.logs_tail(name))
                oom = " (killed: out of memory)" if len(words) > 2 and words[2] == "true" else ""
                raise DeployError(
                    f"health check failed: {name} exited with code {words[1]}{oom} "
                    f"after {attempt} attempt(s)",
                    detail=(logs.stdout + logs.stderr).strip()[-2000:],
                )
            if attempt < p.health_attempts:
                self.sleep(p.health_interval_s)
        logs = self.r.ask(cmd.logs_tail(name))
        raise DeployError(
            f"health check failed: {name} not healthy after {p.health_attempts} attempts "
            f"{p.health_interval_s:g}s apart (last: {last.detail})",
            detail=(logs.stdout + logs.stderr).strip()[-2000:],
        )

    # --- 7. switch ----------------------------------------------------------------------

    def _point_nginx(
        self, host: str, port: int, release: str, *, reload: bool = True
    ) -> Result | None:
        """Write the upstream file, test, reload. None when done; else the failed result.

        Without `reload` the file only names the container nginx already sends to (the
        release under its stable name): the next reload reads it, and no reload, which
        nginx 1.22 cannot make free for every client, is spent on a rename.
        """
        conf = cmd.upstream_conf(host, port, release)
        wrote = self.r.run(cmd.write_upstream(self.env), stdin=conf)
        if not wrote.ok:
            return wrote
        tested = self.r.run(cmd.nginx_test())
        if not tested.ok or not reload:
            return None if tested.ok else tested
        reloaded = self.r.run(cmd.nginx_reload(), timeout=120)
        return None if reloaded.ok else reloaded

    def _switch(self, s: State) -> str:
        env = self.env
        failed = self._point_nginx(s.new_container, s.port, s.release)
        if failed is not None:
            # put the file back as it was; the running nginx never loaded the bad one
            self.r.run(cmd.write_upstream(env), stdin=s.upstream_before)
            self.r.run(cmd.nginx_test())
            raise DeployError("nginx refused the switch", detail=failed.tail())
        s.switched = True
        # from here on the new release serves: what follows is tidying up, and a problem
        # with it is reported, never a reason to call the deploy failed
        t = self.clock()
        done = ""
        try:
            done = self._retire_old(s)
        except Exception as exc:  # noqa: BLE001 - reported; the new release keeps serving
            s.warnings.append(f"after the switch: {type(exc).__name__}: {exc}")
        try:
            followed = self._follow(s)
        except Exception as exc:  # noqa: BLE001 - reported; the new release keeps serving
            followed = ""
            s.warnings.append(f"moving the checkout: {type(exc).__name__}: {exc}")
        return (
            f"nginx -> {s.new_container} (release {s.release}); {done}"
            + (f"; {followed}" if followed else "")
            + f" ({self.clock() - t:.1f}s)"
        )

    def _follow(self, s: State) -> str:
        """Move the checkout to the serving release's commit; name what changed in it."""
        env, before = self.env, s.checkout_before
        if not before:
            return ""
        if not s.commit:
            s.warnings.append(
                f"release {s.release} names no commit: the checkout stays at {before[:12]}"
            )
            return ""
        if s.commit == before:
            return f"checkout at {before[:12]}"
        if not self.r.ask(co.has_commit(env.path, s.commit)).ok:
            self.r.run(cmd.git_fetch(env.path), timeout=600)
        moved = self.r.run(co.checkout(env.path, s.commit))
        if not moved.ok:
            s.warnings.append(f"the checkout stays at {before[:12]}: {moved.tail(2)}")
            return ""
        diff = self.r.ask(co.changed(env.path, before, s.commit))
        changes = co.parse_changed(diff.stdout if diff.ok else "")
        if changes.paths:
            services = ",".join(changes.services) or "nginx,pgbouncer,redis,postgresql"
            s.warnings.append(
                f"{changes.describe()}: the running services still use the old ones; apply "
                f"them with `fab -H {self.plan.server or 'HOST'} apply-services --env "
                f"{env.name} --service {services}`"
            )
        return f"checkout {before[:12]} -> {s.commit[:12]} ({changes.describe()})"

    def _retire_old(self, s: State) -> str:
        p, env = self.plan, self.env
        drained = self._drain(p.drain_timeout_s)
        # the old release: whatever nginx sent traffic to, and the stable name
        olds = [c for c in dict.fromkeys([s.served, env.container]) if c != s.new_container]
        for old in olds:
            stopped = self.r.run(cmd.stop(old, p.stop_timeout_s), timeout=p.stop_timeout_s + 60)
            if stopped.ok or "No such container" in stopped.stderr:
                self.r.run(cmd.remove(old))
            else:
                s.warnings.append(f"could not stop {old}: {stopped.tail(2)}")
        renamed = self.r.run(cmd.rename(s.new_container, env.container))
        if renamed.ok:
            released_name, s.new_container = s.new_container, env.container
            failed = self._point_nginx(env.container, s.port, s.release, reload=False)
            if failed is not None:
                s.warnings.append(
                    f"nginx still names {released_name}, which now runs as {env.container}; "
                    f"the next deploy fixes it ({failed.tail(2)})"
                )
        else:
            s.warnings.append(f"kept the name {s.new_container}: {renamed.tail(2)}")
        if s.spec is not None and s.spec.image:
            # compose's own tag follows the release, so `docker compose up -d` keeps it
            moved = self.r.run(cmd.tag(s.image, s.spec.image))
            if not moved.ok:
                s.warnings.append(f"could not tag {s.spec.image}: {moved.tail(1)}")
        pruned = self._prune(s)
        return f"old drained in {drained:.1f}s and stopped" + (
            f"; pruned {', '.join(pruned)}" if pruned else ""
        )

    def _flush_warnings(self, s: State) -> None:
        for warning in s.warnings:
            self.say(f"      ! {warning}")
        s.shown_warnings += s.warnings
        s.warnings = []

    def _drain(self, timeout: float) -> float:
        """Wait for nginx's old workers to finish their requests (bounded)."""
        t = self.clock()
        while self.clock() - t < timeout:
            res = self.r.ask(cmd.draining_workers(), assume=ASSUMED_DRAINED)
            if not res.ok or res.stdout.strip() in ("", "0"):
                break
            self.sleep(0.2)
        return self.clock() - t

    def _prune(self, s: State) -> list[str]:
        listed = self.r.ask(cmd.release_images(self.env))
        if not listed.ok:
            return []
        kept = cmd.parse_release_images(self.env, listed.stdout)
        log = self.r.ask(history.read(self.env.history_file, 500))
        served = history.served_releases(history.parse(log.stdout if log.ok else ""), self.env.name)
        served.append(s.release)  # serving now; the log hears of it at the end
        protect = [s.release, s.served_release]
        gone = []
        for release in cmd.to_prune(kept, self.plan.keep_releases, protect, served):
            if self.r.run(cmd.untag(self.env, release)).ok:
                gone.append(release)
        return gone

    # --- failure before the switch --------------------------------------------------

    def _undo(self, s: State) -> None:
        if s.new_container:
            res = self.r.run(cmd.remove(s.new_container))
            if res.ok:
                self.say(
                    f"      removed {s.new_container}; {s.served or 'the old release'} "
                    "keeps serving"
                )
        if s.build_dir:
            self.r.run(cmd.remove_build_dir(s.build_dir))
        if s.applied:
            self.say(
                f"      ! migrations applied by this deploy (NOT reversed): {', '.join(s.applied)}"
            )
            self.say("      ! the previous release serves with them in place; to reverse them:")
            for app, target in cmd.reverse_targets(s.plan_before or cmd.parse_plan(""), s.applied):
                self.say(
                    f"      !   fab -H {self.plan.server or 'HOST'} manage --env {self.env.name}"
                    f" --release {s.release} --command 'migrate {app} {target}'"
                )
