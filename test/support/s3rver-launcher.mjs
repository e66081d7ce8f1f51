// Runs s3rver in its own process for tests: node --openssl-legacy-provider s3rver-launcher.mjs <dir> <port> <bucket,...>
// (without the legacy provider s3rver's paginated LIST fails). Prints {"port":N} once listening.
import S3rver from 's3rver';

const [directory, port = '0', buckets = ''] = process.argv.slice(2);
if (!directory) {
  process.stderr.write('usage: s3rver-launcher.mjs <dir> [port] [bucket,...]\n');
  process.exit(2);
}

const server = new S3rver({
  silent: true,
  address: '127.0.0.1',
  port: Number(port),
  directory,
  configureBuckets: buckets
    .split(',')
    .filter(Boolean)
    .map((name) => ({ name })),
});

const { port: bound } = await server.run();
process.stdout.write(`${JSON.stringify({ port: bound })}\n`);

// The parent holds our stdin open; when it goes away, even by SIGKILL, so do we.
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
