"""Language plugin (issue #4): repair masked text by iterative unmasking (``LanguageIRP``).

See ``docs/LANGUAGE.md``. Modules: ``corpus`` (Debian text, held-out rule), ``model`` (the
masked LM), ``plugin`` (the IRP), ``train``, ``evaluate``.
"""
