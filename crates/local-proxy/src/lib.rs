//! HTTP reverse proxy from accepted streams to a local app (work in progress).
