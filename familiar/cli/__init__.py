"""The command line: ``main`` parses (``main.py``), one module per command group calls a
service and maps its errors to exit codes (2 usage or configuration, 1 the run failed,
143 terminated); ``signals.py`` turns SIGTERM/SIGINT into ``Terminated``."""
