"""Use-cases of kernelagent; no tornado, no SQL, no network clients."""
