export const handler = async (input: unknown) => input; // placeholder, being written
