"""The compute side: console scripts that run on the computers the jobs go to (``capthermo-label``, ``capthermo-gnn``,
``capthermo-mace``, ``capthermo-mlip``). They read and write plain files (npz, JSON) and need no AiiDA profile; each
writes ``summary.json`` through :func:`~aiida_capthermo.compute.summary.summary_writer`. The user's command line
(AiiDA) is :mod:`aiida_capthermo.cli`."""
