"""shipper's own metrics and logs."""
