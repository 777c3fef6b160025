#![no_main]
//! Feeds arbitrary bytes to the frame, method and content-header decoders.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warren_broker::amqp::fuzz::decode_everything(data);
});
