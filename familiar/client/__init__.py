"""The client of LLM servers: ``backend.py`` (``SlotClient``: seats, throttle, replica
choice, retries, one streamed request read and checked finished), ``transport.py`` (the
HTTP client under it), ``reading.py`` (an answer read off the wire), ``wire.py`` (foreign
errors mapped onto the error tree, retry rules), ``replicas.py`` (which replica),
``warm.py`` (warm one prefix, then fan out)."""
