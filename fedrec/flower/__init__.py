"""Real deployment on Flower: a ServerApp and a ClientApp (Message API) around the simulator's code.

- :mod:`fedrec.flower.codec`: CohortUpdates and tensors to and from Flower records, byte counts of
  what is actually serialised, and merging node uploads back into cohort order.
- :mod:`fedrec.flower.node`: what a SuperNode does (hold a partition of clients and their private
  rows, train its part of a cohort with the vectorised backend, evaluate its users).
- :mod:`fedrec.flower.federation`: the server's round loop over an abstract transport, writing the
  same outputs as ``fedrec train``.
- :mod:`fedrec.flower.secure`: secure aggregation with the SuperNodes as the protocol's parties
  (node handlers per stage, the server's driver); :mod:`fedrec.flower.secagg_messages` carries the
  protocol's messages and client state as Flower records.
- :mod:`fedrec.flower.app`: the Flower ``ServerApp``/``ClientApp`` objects wiring both to a Grid.
- :mod:`fedrec.flower.deploy`: ``fedrec deploy``: SuperLink + N SuperNodes on loopback, ``flwr run``.

Importing this package does not import Flower; :mod:`fedrec.flower.app` does.
"""
