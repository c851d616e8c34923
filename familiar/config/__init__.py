"""What a workspace says: ``workspace.py`` (lookup rules, role files, ``Config``),
``roles.py`` (the role string), ``slots.py`` (the slots file), ``runtimes.py`` (one
descriptor per server runtime), ``claude_md.py`` (the ``familiar:`` line)."""
