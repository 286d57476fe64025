//! DNS for delivery (being written).
