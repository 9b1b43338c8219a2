//! rpc (in progress)
