"""fleetctl: the composition root of the inference fleet.

The only package that imports :mod:`producer`, :mod:`worker` and
:mod:`autoscaler` together: the ``fleet`` command line and its subcommands,
the demo, the simulator's commands and ``recommend``. The kernel
(:mod:`fleet`) and the three parts above it know nothing of this package.
"""
