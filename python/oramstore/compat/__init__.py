"""Adapters that let other ORAM libraries run on oramstore's storage.

Each adapter is a module of its own that imports its library, so that importing
:mod:`oramstore` (or this package) never imports one:

* :mod:`oramstore.compat.pyoram` -- a PyORAM 0.2.1 block storage device named ``"oramstore"``
  (``pip install oramstore[pyoram]``).
"""
