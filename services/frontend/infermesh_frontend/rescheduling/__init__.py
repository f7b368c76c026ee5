"""The Llumnix rescheduler's decisions (seed 001): which replicas give and take requests, and which
requests move. Pure functions over load tables; the loop that applies them lives beside."""
