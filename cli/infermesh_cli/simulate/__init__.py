"""`infermesh simulate`: a discrete-event simulation of a whole cluster on a virtual clock that runs
the real scheduler core and the real frontend routing code, with a step-time law for the workers."""
