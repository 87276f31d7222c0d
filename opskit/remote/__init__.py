"""Remote work over SSH: the `fab` tasks (deploy, rollback, lock, ...) and what they share.

Each task module ends in its `ns`; fabfile/ only assembles them. The library modules
here (runner, history, notify) import neither fabric nor invoke, so the deploy engine
also runs on the server itself (scripts/deploy.sh).
"""
