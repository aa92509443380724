//! Every case of the store's contract, on SQLite and on PostgreSQL.

cloudvpp_store_conformance::conformance!(
    appsbooks::orgs_tokens_and_limits,
    appsbooks::user_windows_and_filters,
    appsbooks::filtered_pages_are_full_and_exact,
    appsbooks::org_transaction_reads,
    appsbooks::org_transactions_are_all_or_nothing,
    appsbooks::concurrent_writers_never_share_numbers,
    appsbooks::event_claims_leases_and_steps,
    appsbooks::outbox_order_leases_retries_and_trim,
    appsbooks::request_windows,
    appsbooks::corrupt_values_are_reported,
    appsbooks::assets_round_trip,
    appsbooks::assignments_listings_are_exact,
    appsbooks::latest_users_are_the_newest_records,
    mdm::command_queue_order_and_reports,
    mdm::certificate_bindings,
    mdm::location_leases,
    mdm::last_seen_batches,
    engine::locations_once_per_organisation,
    engine::invitation_people_counts_and_changes,
    engine::invitation_search_and_pages,
);
