// The head: API Gateway HTTP API (payload 2.0) -> the volume API router.
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { handleApiEvent } from '#shared/api/routes.ts';
import { logColdStart } from './cold-start.ts';

logColdStart('api');

export async function handler(event: APIGatewayProxyEventV2): Promise<APIGatewayProxyStructuredResultV2> {
  return handleApiEvent(event);
}
