#!/usr/bin/env node
// The `sledge` command. Sledge runs its TypeScript from source with no build step (as `npm start`
// and the Lambda bundler do), so this shim registers tsx's loader for this process only and then
// loads the real CLI. tsx is therefore a runtime dependency, not a dev one.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../cli/main.ts');
// exit() rather than exitCode: idle keep-alive connections to the API must not hold the process.
process.exit(await main(process.argv.slice(2)));
