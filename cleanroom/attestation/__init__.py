"""The service's side of the (simulated) enclave: keys, the code measurement, the trust bundle, the key broker."""
