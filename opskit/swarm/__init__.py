"""Beyond one server: the same stack on Docker Swarm (docs/cluster.md).

stack.py turns compose/server.yml into compose/stack.yml and renders what a deploy sends
(secrets, the nginx site template); commands.py builds the swarm's argv and parses its
answers; cluster.py runs the cluster's tasks and deploys through a Runner.
"""
