/**
 * How the `sledge` command signs its requests: AWS SigV4 for `execute-api` (shared/api/signing.ts)
 * with the standard AWS credential chain, `--profile` and `--region` from the command line.
 */
import { credentialChain, requestSigner, type RequestSigner, type SigningCredentials } from '#shared/api/signing.ts';
import { CliError, UsageError } from './errors.ts';

export interface SigningOptions {
  /** `--profile`: a profile of the shared credentials/config files (default `AWS_PROFILE`). */
  profile?: string;
  /** `--region`: the region to sign for (default: the API URL's, `AWS_REGION`, us-east-1). */
  region?: string;
  /** `--unsigned`: send requests unsigned, for a stack deployed without IAM authorization. */
  unsigned?: boolean;
}

/** The command-line options that choose how requests are signed, for parseArgs. */
export const SIGNING_OPTIONS = {
  profile: { type: 'string' },
  region: { type: 'string' },
  unsigned: { type: 'boolean' },
} as const;

/** Checks `--profile`, `--region` and `--unsigned` as parsed. Throws UsageError. */
export function signingFromValues(values: { profile?: string; region?: string; unsigned?: boolean }): SigningOptions {
  if (values.profile === '') throw new UsageError('--profile needs a name');
  if (values.region !== undefined && !/^[a-z]{2}(-[a-z]+)+-\d+$/.test(values.region)) throw new UsageError(`--region must be an AWS region like us-east-1, got ${JSON.stringify(values.region)}`);
  if (values.unsigned && values.profile !== undefined) throw new UsageError('give either --profile or --unsigned, not both');
  return {
    ...(values.profile !== undefined ? { profile: values.profile } : {}),
    ...(values.region !== undefined ? { region: values.region } : {}),
    ...(values.unsigned ? { unsigned: true } : {}),
  };
}

/** No AWS credentials could be found; the message says where they are looked for. */
export class NoCredentialsError extends CliError {
  override name = 'NoCredentialsError';
}

const unsignedSigner: RequestSigner = async ({ headers }) => ({ ...(headers ?? {}) });

/**
 * The signer the CLI and the gateway use: the credential chain, with a failure to find
 * credentials turned into one line that says what to do.
 */
export async function defaultSigner(apiUrl: string, opts: SigningOptions = {}): Promise<RequestSigner> {
  if (opts.unsigned) return unsignedSigner;
  const chain = await credentialChain(opts.profile);
  const credentials = async (): Promise<SigningCredentials> => {
    try {
      return await chain();
    } catch (err) {
      const profile = opts.profile ?? process.env.AWS_PROFILE;
      throw new NoCredentialsError(
        `no AWS credentials to sign requests with${profile ? ` for profile ${profile}` : ''} (${(err as Error).message}); give --profile NAME, or set ` +
          'AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; locally, export AWS_SHARED_CREDENTIALS_FILE=.sledge/credentials (written by npm start)',
        { cause: err },
      );
    }
  };
  return requestSigner({ apiUrl, credentials, ...(opts.region ? { region: opts.region } : {}) });
}
