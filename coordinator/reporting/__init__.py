"""Building blocks of the HTML report (``coordinator.report`` is the entry point).

Small modules so each can be read on its own: ``fmt`` (how every number is
written), ``stats`` (the little arithmetic a report adds to ``results.json``),
``svg`` (drawing primitives), ``plots`` (figures), ``markup`` (tables and the
per-render context), ``sections`` (survival kinds), ``registry`` (attrition
and pathways) and ``page`` (the document, provenance and print CSS).
"""
