"""``make faults``: the fault matrix on the real stack (Redis, two MLServers, the router, the
preloader as processes); one table row per fault, non-zero exit when a promise breaks."""
