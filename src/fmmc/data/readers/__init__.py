"""Test-set readers by spec (``fmd:``, ``dms:``, ``folder:``, ``jsonl:``): each turns a dataset on disk
into :class:`~fmmc.data.records.Region` lists with labels mapped onto a taxonomy."""
