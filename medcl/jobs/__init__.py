"""Job runners: join the readers, the mathematics and the writers into resumable stages."""
