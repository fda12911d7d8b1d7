//! The sync engine (sans-IO). Filled in by the sync issue; today only staging
//! tables exist so that the store's schema is final.

pub mod staging;
