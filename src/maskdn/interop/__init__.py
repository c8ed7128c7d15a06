"""Bridges to other libraries' interfaces, each an optional extra: :mod:`maskdn.interop.deepinv`."""
