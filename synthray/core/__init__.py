"""Infrastructure every stage shares: storage URIs, content-addressed artifacts and their leases, retries, sharded
actor pools, image encoding, the model resolver, registries, devices, progress and logs."""
