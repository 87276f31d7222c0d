"""Pure builders of the command lines the tasks run: each returns an argv list.

Nothing here runs anything or reads the environment; a task joins the argv with
`opskit.shell.join` and runs it in one place (`c.run`), so every builder is tested by its
exact output.
"""
