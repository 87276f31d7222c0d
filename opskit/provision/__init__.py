"""Provisioning: `fab setup` turns a bare Debian 12 / Ubuntu 24.04 server into the guide's.

state.py reads and decides (pure, parsers tested on saved output), envfiles.py writes the
env files, cron.py holds the scheduled jobs, steps.py is the ordered table of steps and
the engine that runs it. opskit/remote/setup.py is the thin fab task.
"""
