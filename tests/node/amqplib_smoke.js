// amqplib against Warren: a confirm channel publishes persistent messages, a consumer with
// prefetch acks them in order, a mandatory unroutable publish is returned before its ack, and a
// queue.declare with conflicting arguments closes the channel with 406.
const amqp = require("amqplib");
const assert = require("assert");

async function main(url) {
  const conn = await amqp.connect(url);
  const ch = await conn.createConfirmChannel();
  await ch.assertQueue("amqplib", { durable: true });
  for (let i = 0; i < 100; i++) {
    ch.sendToQueue("amqplib", Buffer.from(String(i)), { persistent: true });
  }
  await ch.waitForConfirms();

  const returned = new Promise((resolve) => ch.once("return", resolve));
  await new Promise((resolve, reject) =>
    ch.publish("", "nobody-home", Buffer.from("x"), { mandatory: true }, (err) => (err ? reject(err) : resolve()))
  );
  const ret = await returned;
  assert.strictEqual(ret.fields.replyCode, 312);

  const consumer = await conn.createChannel();
  await consumer.prefetch(10);
  const got = [];
  await new Promise((resolve) => {
    consumer.consume("amqplib", (msg) => {
      got.push(msg.content.toString());
      consumer.ack(msg);
      if (got.length === 100) resolve();
    });
  });
  assert.deepStrictEqual(got, [...Array(100).keys()].map(String));

  const bad = await conn.createChannel();
  bad.on("error", () => {});
  await assert.rejects(bad.assertQueue("amqplib", { durable: false }), /406/);
  await conn.close();
  console.log("amqplib: ok");
}

main(process.argv[2]).catch((e) => {
  console.error(e);
  process.exit(1);
});
