//! The conformance suite: the semantics every fabric backend promises, written once over
//! the fabric interface (`rafi::fabric::Fabric` and its traits) and run against each
//! backend as its own module: `shm::NAME`, `tcp::NAME` and, with the `verbs` feature,
//! `verbs::NAME`.
//!
//! ```text
//! cargo test --test conformance                       # shm and tcp
//! cargo test --test conformance tcp::                 # one backend
//! cargo test --features verbs --test conformance verbs::
//! ```
//!
//! A verbs test skips (with a line saying so) when no verbs device opens, unless
//! `RAFI_REQUIRE_VERBS` or `RAFI_RXE_VM` is set; inside the soft-RoCE VM it also checks that
//! the device is `rxe0`. docs/conformance.md lists what differs per backend.

mod atomics;
mod channel;
mod errors;
mod harness;
mod operations;
mod peers;

/// Instantiates every listed test (`module::name`, a `fn name<F: Fabric>(&F)`) for every
/// backend.
macro_rules! conformance {
    ($($module:ident :: $name:ident),* $(,)?) => {
        backend!(shm, Shm, $($module::$name),*);
        backend!(tcp, Tcp, $($module::$name),*);
        #[cfg(feature = "verbs")]
        backend!(verbs, Verbs, $($module::$name),*);
    };
}

/// One backend's module of tests: each test hands its generic body to `harness::run`
/// through a `FabricUser`, so the body is compiled for that backend's concrete types.
macro_rules! backend {
    ($backend:ident, $kind:ident, $($module:ident :: $name:ident),*) => {
        mod $backend {
            $(
                #[test]
                fn $name() {
                    struct Test;
                    impl rafi::fabric::FabricUser for Test {
                        type Output = ();
                        fn run<F: rafi::fabric::Fabric>(self, fabric: F) {
                            crate::$module::$name(&fabric)
                        }
                    }
                    crate::harness::run(rafi::fabric::FabricKind::$kind, Test);
                }
            )*
        }
    };
}

conformance!(
    operations::write_lands_and_completes,
    operations::unsignaled_write_lands_without_completion,
    operations::write_with_imm_consumes_a_receive,
    operations::send_scatters_into_posted_buffers,
    operations::send_with_imm_and_gather_list,
    operations::inline_payloads_need_no_registration,
    operations::read_fetches_remote_bytes,
    operations::region_registered_after_connect_is_reachable,
    operations::slices_build_and_read_payloads_in_place,
    operations::many_messages_keep_order_and_ids,
    operations::receiver_not_ready_recovers_when_a_receive_arrives,
    operations::a_target_that_polls_is_not_stalled_by_a_waiting_request,
    errors::bad_rkey_is_a_remote_access_error_and_leaves_memory_untouched,
    errors::out_of_bounds_is_a_remote_access_error,
    errors::missing_access_rights_are_refused,
    errors::bad_lkey_is_a_local_protection_error,
    errors::deregistered_region_is_refused,
    errors::rkey_of_another_domain_is_refused,
    errors::receiver_not_ready_retries_then_fails,
    errors::send_larger_than_the_receive_buffer_fails_both_sides,
    errors::send_into_a_bad_receive_buffer_fails_both_sides,
    errors::error_state_flushes_sends_and_receives,
    errors::post_errors_are_reported_synchronously,
    errors::full_queues_refuse_until_completions_are_polled,
    errors::connect_refuses_foreign_and_second_endpoints,
    atomics::fetch_add_and_cmp_swap_return_old_values,
    atomics::misaligned_atomic_is_an_invalid_request,
    atomics::concurrent_fetch_add_counts_every_addition,
    atomics::concurrent_cmp_swap_loses_no_update,
    peers::dropped_peer_fails_requests_and_flushes_the_rest,
    peers::peer_in_error_state_fails_requests_and_flushes_the_rest,
    channel::blocking_wait_returns_a_completion,
    channel::blocking_wait_uses_no_cpu,
    channel::blocking_wait_times_out,
    channel::armed_queue_signals_its_channel,
);
