//! Kura chunk store and catalog (being written).
