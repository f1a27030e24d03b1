"""lamina.store.registry: the OCI distribution client.

Speaks the OCI distribution spec v1.1 over HTTP(S) to any registry: credentials
(`auth`), one authenticated HTTP session per registry with retries (`session`),
pulling an image into the store with every byte verified (`pull`) and pushing an
image of the store (`push`). Imports only lamina.store.
"""
