"""Test-set readers by spec (``fmd:``, ``dms:``, ``folder:``, ``jsonl:``; ``fmmc list datasets``): each turns a
dataset on disk into :class:`~fmmc.data.records.Region` lists with labels mapped onto a taxonomy.

:mod:`~fmmc.data.readers.spec` parses a spec and dispatches it through the ``dataset`` registry
(:func:`~fmmc.data.readers.spec.load_test_set`); :mod:`~fmmc.data.readers.fmd`, :mod:`~fmmc.data.readers.dms`,
:mod:`~fmmc.data.readers.folder` and :mod:`~fmmc.data.readers.jsonl` are the readers, one layout each.
"""
